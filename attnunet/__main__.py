from attnunet.cli import main

raise SystemExit(main())
