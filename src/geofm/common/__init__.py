"""The project's one copy of each cross-cutting helper: atomic writes (:mod:`.io`), seeds derived from keys
(:mod:`.seeding`), this process's rank and world size (:mod:`.ranks`) and the warm-up + cosine learning-rate
schedule (:mod:`.lr`). Nothing here imports torch.distributed state at import time or reads the config."""
