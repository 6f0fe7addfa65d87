"""PyTorch checkpoints: conversion to JAX variables and pretrained initialisation."""
