#!/usr/bin/env bash
# The lab demo (`make demo`): bring the lab up, deploy the bookinfo-like
# sample app over both nodes, and show requests from a client pod reaching
# each service, with the pod and node that answered; then install the mesh
# (istiod-lite, ztunnel), enroll the namespace and show the same requests
# carried over HBONE with the identities the ztunnels logged.
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

step "Installing the mesh: istiod-lite, then a ztunnel per node"
$kubectl apply -f install/crds/ >/dev/null
$kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
$kubectl apply -f install/manifests/istiod-lite.yaml >/dev/null
$kubectl -n cairn-system rollout status deploy/istiod-lite --timeout=90s >/dev/null
$kubectl apply -f install/manifests/ztunnel.yaml >/dev/null
$kubectl -n cairn-system rollout status ds/ztunnel --timeout=90s >/dev/null
$kubectl -n cairn-system get pods -o wide | awk '{printf "  %-34s %-8s %-14s %s\n", $1, $3, $6, $7}'

step "Enrolling namespace $ns: kubectl label namespace $ns istio.io/dataplane-mode=ambient"
$kubectl label namespace $ns istio.io/dataplane-mode=ambient >/dev/null
for _ in $(seq 50); do   # the running pods are captured without a restart
  $kubectl -n $ns exec "$client" -- iptables-save -t nat 2>/dev/null | grep -q CAIRN_ && break
  sleep 0.2
done
for svc in productpage details reviews ratings; do
  $kubectl -n $ns exec "$client" -- curl -sS --max-time 3 "http://$svc:9080/" >/dev/null
done
sleep 1.2   # ztunnel writes its access log at least once a second
printf '  requests again, now over HBONE (mutual TLS 1.3 on port 15008); the destination ztunnels logged:\n'
for z in $($kubectl -n cairn-system get pods -l app=ztunnel -o name); do
  $kubectl -n cairn-system logs "$z" 2>/dev/null | grep '"reporter":"destination"' | grep -v '"error"' |
    sed -E 's/.*"src.identity":"([^"]*)".*"dst.addr":"([^"]*)".*"dst.workload":"([^"]*)".*"dst.identity":"([^"]*)".*/\1 -> \3 (\4)/' |
    sort -u | sed 's/^/    /'
done

step "What the lab is"
cat <<TXT
  nodes are network namespaces on one bridge; pods are processes in their own
  network namespaces, wired by the CNI bridge plugin; Services are kube-proxy
  iptables rules in each node; names come from CoreDNS, itself a pod.

  The mesh: istiod-lite (control plane and CA) in cairn-system, a ztunnel on
  each node that captures the enrolled pods' TCP inside their network
  namespaces and carries it over HBONE with their SPIFFE identities.

  Try:  export KUBECONFIG=$KUBECONFIG
        $kubectl get nodes,pods -A -o wide
        $kubectl -n $ns exec $client -- curl -s reviews:9080/
        $kubectl -n cairn-system logs ds/ztunnel | grep '"log":"access"'
        $kubectl label namespace $ns istio.io/dataplane-mode-   ${dim}# leaves the mesh${off}
        bin/lab status
        bin/lab down        ${dim}# removes everything the lab made${off}
TXT
