"""suara: the vote-tally backbone (tally → aggregate → publish)."""
