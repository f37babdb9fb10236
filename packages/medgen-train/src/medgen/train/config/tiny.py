"""The overrides that shrink a bundled diffusion config to a run of a few seconds: a 16 x 16,
4-z-bin cache of the recipe, a two-level 16/32 UNet without attention, 2 updates of batch 4,
validation on 4 training items. The tests' end-to-end runs (and anyone checking an install)
use them: ``medgen-train fit quickstart $(python -c "from medgen.train.config.tiny import
TINY; print(*TINY)")``."""

TINY = (
    "model.channels=16,32",
    "model.attention_levels=false,false",
    "training.steps=2",
    "training.batch_size=4",
    "training.warmup_steps=1",
    "training.log_every=1",
    "task.eval_samples=4",
    "data.eval_split=train",
    "data.recipe.size=16",
    "data.recipe.n_bins=4",
)
