"""Datasets maskrt makes or reads (COCO format)."""
