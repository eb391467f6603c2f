"""`python -m mapo_train` and `accelerate launch -m mapo_train`: the same as `mapo-train`."""

from mapo_train.cli import main

if __name__ == "__main__":
    main()
