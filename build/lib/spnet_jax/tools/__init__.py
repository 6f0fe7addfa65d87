"""Commands that work on finished runs: predict, figures, report, the results suite."""
