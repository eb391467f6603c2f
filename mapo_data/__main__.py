"""`python -m mapo_data` and `accelerate launch -m mapo_data ...`."""

from mapo_data.cli import main

if __name__ == "__main__":
    main()
