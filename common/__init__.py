"""Shared plumbing for the HadaKron engine: error types, atomic writes, path guard, file reading.

Imports only the standard library, torch and safetensors (never ComfyUI).
"""
