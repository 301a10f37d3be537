#!/usr/bin/env bash
# System packages that medim's report metrics need, installed when missing (idempotent):
#   java          pycocoevalcap's PTB tokenizer and METEOR 1.5  (Debian: openjdk-17-jre-headless)
#   wordnet-base  WordNet 3.0 files for NLTK METEOR (medim protocol), read from /usr/share/wordnet
# Never fails the build: without root or apt-get it only reports what is missing.
set -u

missing=()
if command -v java >/dev/null 2>&1; then
    echo "system-deps: java present ($(command -v java))"
else
    missing+=(openjdk-17-jre-headless)
fi
if [ -f /usr/share/wordnet/data.noun ]; then
    echo "system-deps: wordnet-base present (/usr/share/wordnet)"
else
    missing+=(wordnet-base)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "system-deps: nothing to install"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: missing ${missing[*]}; not root or no apt-get, so not installed." \
         "COCO metrics need java; NLTK METEOR reports itself unavailable without wordnet-base."
    exit 0
fi
echo "system-deps: installing ${missing[*]}"
if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    echo "system-deps: installed ${missing[*]}"
else
    echo "system-deps: apt-get could not install ${missing[*]}; the metrics that need them will report so"
fi
exit 0
