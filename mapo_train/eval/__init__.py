"""`mapo-train eval`: did the alignment work? Base against fine-tuned, side by side, judged.

- ``config``: the typed settings (``EvalConfig``);
- ``prompts``: prompt choice and the held-out check against the training data;
- ``models``: a tuned UNet or LoRA put onto the base pipeline and taken off again;
- ``winrate``: win rates, shares and intervals (pure functions);
- ``grid`` / ``report``: side-by-side PNGs, Markdown and JSON;
- ``card_link``: the evaluated runs' model cards get the headline numbers and a link to the report;
- ``run``: the run itself (``run_eval``). The judges live in ``mapo_data.judges``.
"""
