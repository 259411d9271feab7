"""Widgets grouped by area: disks, network, progress, server status."""
