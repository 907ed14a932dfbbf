"""dreamcore studio: the web app's engine room — recipes and presets, the checks on what a page sends, the job
queue (one process per job) and the run folders read back as the app's only state."""
