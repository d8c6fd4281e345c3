"""Training (stage 3): ``python -m mtlser.train``; the loop is :class:`mtlser.train.trainer.Trainer`."""
