#!/bin/sh
# Prints a greeting; the workflows build and "test" this.
name=${1:-world}
echo "hello, $name"
