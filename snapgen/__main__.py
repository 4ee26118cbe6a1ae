from snapgen.cli import main

raise SystemExit(main())
