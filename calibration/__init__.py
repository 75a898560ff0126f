"""trustmap.calibration: audit whether a detector's confidence scores can be trusted."""
