from ussycode.cli import main

raise SystemExit(main())
