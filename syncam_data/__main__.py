"""`python -m syncam_data` is `syncam-data`."""

from syncam_data.cli import main

if __name__ == "__main__":
    main()
