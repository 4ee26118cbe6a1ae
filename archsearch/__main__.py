from archsearch.cli import main

raise SystemExit(main())
