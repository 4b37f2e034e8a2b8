"""The decision log: the log process beside each worker, the bounded writer, the outputs
(stdout, file, syslog) and the formats (ECS, OCSF, CEF). Event records are the core's
(core/events/); this room renders and delivers them, never delaying a verdict."""
