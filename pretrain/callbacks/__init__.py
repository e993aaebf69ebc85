"""Lightning callbacks of `bert-pretrain`, one concern per module: throughput and MFU lines
(`throughput`), the rich progress bar (`progress`), the wall-clock budget (`budget`), preemption
(`preemption`), the NaN stop and RNG state (`training_state`), and `exit_after_steps`."""
