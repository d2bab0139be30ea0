#!/bin/sh
set -e
./hello.sh job.sh
