package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the plugin's "type" in a CNI configuration list.
const PluginType = "cairn-cni"

// DefaultTimeout bounds how long ADD waits for ztunnel to capture a pod.
const DefaultTimeout = 30 * time.Second

// Config is the plugin's entry in the node's configuration list.
type Config struct {
	types.PluginConf
	// Socket is ztunnel's socket; default DefaultSocket.
	Socket string `json:"socket,omitempty"`
	// TimeoutSeconds bounds an ADD; default DefaultTimeout.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty"`
}

// k8sArgs are the CNI_ARGS a kubelet passes.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // the names are CNI's
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
}

// Funcs are the plugin's CNI commands, for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Del: cmdDel, Check: cmdCheck}
}

// Versions are the CNI spec versions the plugin speaks.
func Versions() version.PluginInfo { return version.PluginSupports("0.4.0", "1.0.0", "1.1.0") }

func parse(args *skel.CmdArgs) (*Config, Pod, client, error) {
	conf := &Config{}
	if err := json.Unmarshal(args.StdinData, conf); err != nil {
		return nil, Pod{}, client{}, fmt.Errorf("parsing the network configuration: %w", err)
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, Pod{}, client{}, fmt.Errorf("parsing the previous plugins' result: %w", err)
	}
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return nil, Pod{}, client{}, fmt.Errorf("parsing CNI_ARGS: %w", err)
	}
	pod := Pod{
		Namespace:   string(ka.K8S_POD_NAMESPACE),
		Name:        string(ka.K8S_POD_NAME),
		UID:         string(ka.K8S_POD_UID),
		ContainerID: args.ContainerID,
		Netns:       args.Netns,
	}
	c := client{socket: conf.Socket, timeout: time.Duration(conf.TimeoutSeconds) * time.Second}
	if c.socket == "" {
		c.socket = DefaultSocket
	}
	if c.timeout <= 0 {
		c.timeout = DefaultTimeout
	}
	return conf, pod, c, nil
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, pod, c, err := parse(args)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return fmt.Errorf("%s must be chained after the plugins that give the pod its network (no prevResult)", PluginType)
	}
	prev, err := types100.GetResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("reading the previous plugins' result: %w", err)
	}
	for _, ip := range prev.IPs {
		pod.IPs = append(pod.IPs, ip.Address.IP.String())
	}
	if pod.Namespace != "" && pod.Name != "" && pod.Netns != "" {
		out, err := c.post(context.Background(), "add", pod)
		if err != nil {
			return err
		}
		var reply Reply
		if err := json.Unmarshal(out, &reply); err != nil {
			return fmt.Errorf("malformed reply from ztunnel: %w", err)
		}
	}
	// Pass the previous result on: this plugin changes no interface.
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	_, pod, c, err := parse(args)
	if err != nil || pod.Namespace == "" || pod.Name == "" || pod.Netns == "" {
		return nil // nothing to release that ztunnel would not find itself
	}
	// ztunnel releases pods it sees deleted, so a DEL it misses is not an
	// error the runtime could do anything about.
	_, _ = c.post(context.Background(), "del", pod)
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	_, _, _, err := parse(args)
	return err
}
