"""The stop-and-evaluate rule both runtimes share."""
from ps_trainer.core.schedule import (MAX_MINUTES, MAX_UPDATES, TARGET_MIOU, EvalSchedule, StopRule)


def test_stop_rule_names_the_first_condition_met():
    rule = StopRule(max_updates=100, max_s=60.0, target_miou=0.5)
    assert rule.reason(99, 59.0, {"miou": 0.49, "time_s": 10.0}) is None
    assert rule.reason(100, 0.0, None) == MAX_UPDATES
    assert rule.reason(None, 60.0, None) == MAX_MINUTES          # version unknown: time still counts
    assert rule.reason(5, 1.0, {"miou": 0.5, "time_s": 12.5}) == TARGET_MIOU
    assert rule.reached({"miou": 0.5, "time_s": 12.5}) == 12.5
    assert rule.reached({"miou": None, "time_s": 12.5}) is None
    assert StopRule(100, 60.0, None).reason(5, 1.0, {"miou": 0.99, "time_s": 1.0}) is None


def test_eval_schedule_counts_from_the_end_of_the_last_evaluation():
    asked = []

    def version():
        asked.append(1)
        return 25

    schedule = EvalSchedule(every_s=10.0, every_updates=20, now=0.0)
    assert schedule.due(10.0, version) and not asked       # time alone: the version is not asked
    assert schedule.due(1.0, version) and asked            # 25 versions since 0
    schedule.done(2.0, 25)
    assert not schedule.due(3.0, lambda: 44)               # 19 versions since 25
    assert schedule.due(3.0, lambda: 45)
    schedule.done(4.0, None)                               # a skipped evaluation: versions stand
    assert schedule.due(5.0, lambda: 45) and not schedule.due(5.0, lambda: 44)
    assert not EvalSchedule(10.0, 0, now=0.0).due(9.0, lambda: 10 ** 6)
