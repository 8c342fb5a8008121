"""In-graph adapter training engine (pure: torch only; ComfyUI glue lives in nodes/).

* :class:`~.config.TrainConfig` — every setting (musubi names and defaults, help strings);
* :mod:`.targets` — musubi's target presets as regexes on ComfyUI module paths, saved names;
* :mod:`.modules` / :mod:`.network` — trainable LoRA/LoHa/LoKr (bypass forwards, alpha buffer);
* :mod:`.timesteps`, :mod:`.optim`, :mod:`.batches`, :mod:`.loop` — the training loop;
* :mod:`.metadata`, :mod:`.checkpoint`, :mod:`.session` — files, resume, one run end to end.
"""

from .config import TrainConfig
from .session import TrainingSession

__all__ = ["TrainConfig", "TrainingSession"]
