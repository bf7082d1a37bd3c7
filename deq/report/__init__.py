"""Tables and figures of the study, made from what the runs and benchmarks wrote."""
