"""Worked example: a churn model trained on synthetic customers, scored by the `custom` task."""
