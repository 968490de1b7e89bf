"""Adapters that put mlsignal inside other trading tools (``mlsignal.adapters.freqtrade``).

Nothing is imported here: an adapter module is imported only by the tool that uses it, so
``import mlsignal`` never imports a trading framework.
"""
