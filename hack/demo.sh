#!/usr/bin/env bash
# The lab demo (`make demo`): bring the lab up, deploy the bookinfo-like
# sample app over both nodes, and show requests from a client pod reaching
# each service, with the pod and node that answered.
# Needs root and the binaries (`make lab-bins`: bin/lab, bin/echoserver,
# bin/coredns, bin/k8s).
set -euo pipefail
cd "$(dirname "$0")/.."

bold=$'\e[1m'; dim=$'\e[2m'; off=$'\e[0m'
[[ -t 1 ]] || { bold=; dim=; off=; }
step() { printf '\n%s==> %s%s\n' "$bold" "$*" "$off"; }

export KUBECONFIG=${LAB_DIR:-$PWD/.lab}/kubeconfig
kubectl=bin/k8s/kubectl
ns=bookinfo

step "Starting the lab (a fresh one; any previous lab is removed first)"
bin/lab up | sed -n 1p

step "Deploying the sample app into namespace $ns"
$kubectl create namespace $ns >/dev/null
$kubectl -n $ns apply -f integration/apps/manifests/ >/dev/null
start=${EPOCHREALTIME/./}
$kubectl -n $ns wait --for=condition=Available deployment --all --timeout=90s >/dev/null
ms=$(( (${EPOCHREALTIME/./} - start) / 1000 ))
printf 'all pods ready %d.%ds after apply\n' $((ms / 1000)) $((ms % 1000 / 100))
$kubectl -n $ns get pods -o wide | awk '{printf "  %-34s %-8s %-14s %s\n", $1, $3, $6, $7}'

client=$($kubectl -n $ns get pods -l app=client -o jsonpath='{.items[0].metadata.name}')
client_node=$($kubectl -n $ns get pod "$client" -o jsonpath='{.spec.nodeName}')
declare -A node_of
while read -r pod node; do node_of[$pod]=$node; done < <(
  $kubectl -n $ns get pods -o jsonpath='{range .items[*]}{.metadata.name} {.spec.nodeName}{"\n"}{end}')

step "Requests from $client (on $client_node) to each service, by DNS name"
for svc in productpage details reviews reviews reviews reviews ratings; do
  body=$($kubectl -n $ns exec "$client" -- curl -sS --max-time 3 "http://$svc:9080/")
  pod=$(grep -o '"pod":"[^"]*"' <<<"$body" | cut -d'"' -f4)
  node=${node_of[$pod]:-?}
  where="same node"; [[ $node == "$client_node" ]] || where="${bold}across nodes${off}"
  printf '  %-22s -> %-34s on %-10s (%s)\n' "$svc:9080" "$pod" "$node" "$where"
done

step "What the lab is"
cat <<TXT
  nodes are network namespaces on one bridge; pods are processes in their own
  network namespaces, wired by the CNI bridge plugin; Services are kube-proxy
  iptables rules in each node; names come from CoreDNS, itself a pod.

  Try:  export KUBECONFIG=$KUBECONFIG
        $kubectl get nodes,pods -A -o wide
        $kubectl -n $ns exec $client -- curl -s reviews:9080/
        bin/lab status
        bin/lab down        ${dim}# removes everything the lab made${off}
TXT
