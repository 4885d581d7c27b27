"""One package per paper: its method modules, tasks, experiment(s), commands and README. The core finds
them by module name (see `lmlab.plugins`) and never imports one; no method imports another."""
