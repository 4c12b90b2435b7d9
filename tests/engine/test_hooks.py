"""The validation hook says that a validation starts before it runs (0.2 froze the progress bar
for ~70 s with no message), then logs its scores."""

from __future__ import annotations

from types import SimpleNamespace

from tpvkit.engine import hooks
from tpvkit.engine.hooks import StepInfo, ValidationHook


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.records: list[tuple] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    def record(self, kind: str, iteration: int, values: dict) -> None:
        self.records.append((kind, iteration, values))


def test_validation_announces_itself_before_it_runs(monkeypatch):
    log = Log()

    def fake_validate(trainer):
        assert log.lines == ["validation at iteration 4: 3 samples ..."]  # said before running
        return {"num_samples": 3, "miou": 0.5}, "miou=0.5000"

    monkeypatch.setattr(hooks, "validate", fake_validate)
    trainer = SimpleNamespace(parts=SimpleNamespace(val_set=[0, 1, 2]))
    ValidationHook(2).after_step(trainer, StepInfo(4, False, False, False), log)
    assert log.lines[-1] == "validation at iteration 4: miou=0.5000 (3 samples)"
    assert log.records == [("val", 4, {"num_samples": 3, "miou": 0.5})]
