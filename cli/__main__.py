from . import main

if __name__ == "__main__":  # not when merely imported
    main()
