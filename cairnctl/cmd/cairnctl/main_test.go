package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestVersionCommandPrintsVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		cmd := newRootCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(args)
		if err := cmd.Execute(); err != nil {
			t.Fatalf("cairnctl %v: %v", args, err)
		}
		if !strings.Contains(out.String(), "dev") {
			t.Errorf("cairnctl %v printed %q, want the version (dev)", args, out.String())
		}
	}
}

func TestUnknownCommandFails(t *testing.T) {
	cmd := newRootCommand()
	cmd.SetArgs([]string{"no-such-command"})
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	if err := cmd.Execute(); err == nil {
		t.Fatal("an unknown subcommand succeeded, want an error")
	}
}

func TestWaypointHelpListsSubcommandsAndConnectionFlags(t *testing.T) {
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"waypoint", "apply", "--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--enroll-namespace", "--overwrite", "--wait", "--waypoint-timeout", "--for", "--name",
		"--kubeconfig", "--context", "--namespace", "--request-timeout"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("cairnctl waypoint apply --help does not mention %s:\n%s", want, out.String())
		}
	}
	cmd = newRootCommand()
	out.Reset()
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"waypoint", "--help"})
	if err := cmd.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"apply", "delete", "generate", "list", "status"} {
		if !strings.Contains(out.String(), "  "+want+" ") {
			t.Errorf("cairnctl waypoint --help does not list %s:\n%s", want, out.String())
		}
	}
}
