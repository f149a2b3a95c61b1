"""The `nnctl` program's entry point: the click commands (nnctl.cli.commands) in a process whose
start-up and exit skip work that only the cyclic garbage collector would do.

What start-up imports (click, PyYAML and nnctl's commands: some 16,000 objects) lives until the
process ends, so it is imported with the collector off and then frozen (`gc.freeze`: moved to a
generation no collection visits). What is left at exit is frozen too: the interpreter's shutdown
would otherwise run full collections over everything (20 ms, a tenth of `nnctl summary`'s wall
time, when measured) to free memory the operating system takes back anyway. During the command
the collector runs as usual, so a long `nnctl train` collects its own cycles.
"""
import gc


def main():
    gc.disable()
    from nnctl.cli.commands import cli

    gc.freeze()
    gc.enable()
    try:
        cli(prog_name="nnctl")
    finally:
        gc.freeze()
