"""LoRA for the federated methods: PEFT glue (adapters), tensor names, factor maths, heterogeneous
ranks and the per-layer aggregation loop, shared by every LoRA method in fedsub.methods."""
