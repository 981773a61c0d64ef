package labtest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// TestSampleAppServesLoad deploys the sample app exactly as `make demo` does
// (integration/apps/manifests) and drives it with fortio from the client
// pod: every request must succeed, and both versions of reviews, on their
// two nodes, must answer.
func TestSampleAppServesLoad(t *testing.T) {
	setup(t)
	if _, err := os.Stat(filepath.Join(cfg.RepoDir, "bin", "fortio")); err != nil {
		t.Fatalf("bin/fortio is missing (make lab-bins builds it): %v", err)
	}
	ns := namespace(t)
	files, err := filepath.Glob(filepath.Join(cfg.RepoDir, "integration", "apps", "manifests", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no sample app manifests (err %v)", err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		apply(t, ns, string(data))
	}
	client := waitPods(t, ns, "app=client", 1)[0]
	reviews := waitPods(t, ns, "app=reviews", 2)
	if reviews[0].Spec.NodeName == reviews[1].Spec.NodeName {
		t.Errorf("both reviews pods run on %s, want them spread over the nodes", reviews[0].Spec.NodeName)
	}

	// 400 requests over 4 connections, as fast as the lab goes. fortio
	// prints its results on stderr.
	out, err := execIn(t, ns, client.Name, "sh", "-c",
		"fortio load -qps 0 -n 400 -c 4 -timeout 3s http://reviews."+ns+".svc.cluster.local:9080/ 2>&1")
	if err != nil {
		t.Fatalf("fortio load: %v\n%s", err, out)
	}
	if !regexp.MustCompile(`(?m)^Code 200 : 400 \(100\.0 %\)$`).MatchString(out) {
		t.Errorf("fortio did not get 400 answers with 200:\n%s", out)
	}

	// Both versions answer through the Service (kube-proxy picks at random).
	seen := map[string]bool{}
	eventually(t, 20*time.Second, "both reviews versions answer", func() error {
		reply, err := curlEcho(t, ns, client.Name, "http://reviews:9080/")
		if err != nil {
			return err
		}
		seen[reply.Pod] = true
		for _, p := range reviews {
			if !seen[p.Name] {
				return fmt.Errorf("no answer yet from %s (seen %v)", p.Name, seen)
			}
		}
		return nil
	})
}
