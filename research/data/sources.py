"""Build the (train, eval) sources a `DataConfig` names."""

from __future__ import annotations

from typing import Any

from research.data.text import text_sources


def task_class(name: str):
    """The class in `research.tasks` called `name` (case-insensitive); ValueError lists them."""
    from research import tasks
    classes = {n.lower(): getattr(tasks, n) for n in getattr(tasks, "__all__", dir(tasks))
               if isinstance(getattr(tasks, n, None), type) and n != "Task"
               and hasattr(getattr(tasks, n), "__getitem__")}
    cls = classes.get(name.lower())
    if cls is None:
        raise ValueError(f"data.task must name a task in research.tasks, got {name!r}; "
                         f"valid tasks: {sorted(c.__name__ for c in classes.values())}")
    return cls


def build_sources(data: Any, seed: int) -> tuple[Any, Any]:
    """(train_source, eval_source) for a `research.train.DataConfig`.

    Tasks: the train source has seed `seed` and `data.train_examples` examples; the eval source
    has seed `seed + 1_000_003` (different examples) and `data.eval_examples`. Text: the heads
    and tails of the documents (see `research.data.text.text_sources`).
    """
    if data.source == "task":
        cls = task_class(data.task)
        args = dict(data.task_args)
        try:
            train = cls(**args, seed=int(seed), num_examples=data.train_examples)
            evals = cls(**args, seed=int(seed) + 1_000_003, num_examples=data.eval_examples)
        except TypeError as e:
            raise ValueError(f"data.task_args {args} do not fit {cls.__name__}: {e}") from None
        return train, evals
    return text_sources(data.source, seq_len=data.seq_len, tokenizer=data.tokenizer,
                        paths=data.paths, token_dtype=data.token_dtype,
                        val_fraction=data.val_fraction)
