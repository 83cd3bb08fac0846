from . import main

if __name__ == "__main__":  # not when a spawned writer process imports it
    main()
