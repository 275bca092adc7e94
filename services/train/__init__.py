"""TrainService: training tasks as persistent jobs (SQLite job store), each run by its own
worker process (TRL SFTTrainer full fine-tune or LoRA), watched live, cancellable, resumable."""
