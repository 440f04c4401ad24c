"""The jaw: drivers that move the servo, and the sync loop that follows the audio clock."""
