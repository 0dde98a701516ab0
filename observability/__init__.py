"""Operating takeback in production (README "Operating it"): logs, traces, the worker's metrics and health."""
