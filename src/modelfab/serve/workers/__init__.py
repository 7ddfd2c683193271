"""Worker processes: the supervisor that starts and restarts them, one worker's process and event loops,
and the autoscaling policy."""
