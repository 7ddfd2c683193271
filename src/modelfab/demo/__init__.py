"""The quickstart and the demos: generated data (``synth``), demo traffic through tritonclient, a
``modelfab serve`` child process, and the iteration-loop story. Nothing outside this package imports it;
its extra dependencies come with ``modelfab[demo]``."""
