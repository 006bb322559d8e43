"""Running a job: launch, the coordinator, the local loop, the evaluator, the recorder, run
folders and the config gate."""
