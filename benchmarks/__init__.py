"""The shmpool benchmark suite: shmpool against serial NumPy and the usual peers.

Run it with ``python benchmarks/run.py --quick`` (see ``benchmarks/README.md``). This is a
package so that every worker process of every system can import the kernels by name.
"""
