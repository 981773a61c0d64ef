package kubeclient

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// The subset of the kubeconfig format (clientcmd's v1 Config) that Load
// understands: what kubectl, Cairn's lab and internal/kubeserver write for
// a cluster reached with a client certificate or a bearer token. Fields for
// other ways of authenticating are read only to refuse them: ignoring them
// would send requests as the wrong user, or as nobody.
type kubeconfig struct {
	CurrentContext string `json:"current-context"`
	Clusters       []struct {
		Name    string `json:"name"`
		Cluster struct {
			Server                   string `json:"server"`
			CertificateAuthority     string `json:"certificate-authority"`
			CertificateAuthorityData []byte `json:"certificate-authority-data"`
			InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
			TLSServerName            string `json:"tls-server-name"`
			ProxyURL                 string `json:"proxy-url"`
		} `json:"cluster"`
	} `json:"clusters"`
	Users []struct {
		Name string `json:"name"`
		User struct {
			ClientCertificate     string `json:"client-certificate"`
			ClientCertificateData []byte `json:"client-certificate-data"`
			ClientKey             string `json:"client-key"`
			ClientKeyData         []byte `json:"client-key-data"`
			Token                 string `json:"token"`
			TokenFile             string `json:"tokenFile"`

			Impersonate       string   `json:"as"`
			ImpersonateUID    string   `json:"as-uid"`
			ImpersonateGroups []string `json:"as-groups"`
			Username          string   `json:"username"`
			Password          string   `json:"password"`
			Exec              any      `json:"exec"`
			AuthProvider      any      `json:"auth-provider"`
		} `json:"user"`
	} `json:"users"`
	Contexts []struct {
		Name    string `json:"name"`
		Context struct {
			Cluster string `json:"cluster"`
			User    string `json:"user"`
		} `json:"context"`
	} `json:"contexts"`
}

// LoadKubeconfig reads the current context of the kubeconfig file at path.
// File references in it are relative to the file's directory, as kubectl
// has them.
func LoadKubeconfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("reading kubeconfig: %w", err)
	}
	cfg, err := parseKubeconfig(data, filepath.Dir(path))
	if err != nil {
		return Config{}, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

func parseKubeconfig(data []byte, dir string) (Config, error) {
	var kc kubeconfig
	if err := yaml.Unmarshal(data, &kc); err != nil {
		return Config{}, err
	}
	if kc.CurrentContext == "" {
		return Config{}, errors.New("no current-context")
	}
	var clusterName, userName string
	found := false
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext {
			clusterName, userName, found = c.Context.Cluster, c.Context.User, true
			break
		}
	}
	if !found {
		return Config{}, fmt.Errorf("context %q is not in the file", kc.CurrentContext)
	}

	var cfg Config
	found = false
	for _, c := range kc.Clusters {
		if c.Name != clusterName {
			continue
		}
		cl := c.Cluster
		if cl.Server == "" {
			return Config{}, fmt.Errorf("cluster %q has no server", clusterName)
		}
		if cl.ProxyURL != "" {
			return Config{}, fmt.Errorf("cluster %q: proxy-url is not supported", clusterName)
		}
		cfg.Server = strings.TrimSuffix(cl.Server, "/")
		cfg.ServerName = cl.TLSServerName
		cfg.Insecure = cl.InsecureSkipTLSVerify
		ca, err := dataOrFile(cl.CertificateAuthorityData, cl.CertificateAuthority, dir)
		if err != nil {
			return Config{}, fmt.Errorf("cluster %q: certificate authority: %w", clusterName, err)
		}
		cfg.CAData = ca
		found = true
		break
	}
	if !found {
		return Config{}, fmt.Errorf("cluster %q is not in the file", clusterName)
	}

	if userName == "" {
		return cfg, nil // anonymous
	}
	found = false
	for _, u := range kc.Users {
		if u.Name != userName {
			continue
		}
		us := u.User
		switch {
		case us.Exec != nil:
			return Config{}, fmt.Errorf("user %q: exec credential plugins are not supported", userName)
		case us.AuthProvider != nil:
			return Config{}, fmt.Errorf("user %q: auth-provider plugins are not supported", userName)
		case us.Username != "" || us.Password != "":
			return Config{}, fmt.Errorf("user %q: basic authentication is not supported", userName)
		case us.Impersonate != "" || us.ImpersonateUID != "" || len(us.ImpersonateGroups) > 0:
			return Config{}, fmt.Errorf("user %q: impersonation is not supported", userName)
		}
		var err error
		if cfg.CertData, err = dataOrFile(us.ClientCertificateData, us.ClientCertificate, dir); err != nil {
			return Config{}, fmt.Errorf("user %q: client certificate: %w", userName, err)
		}
		if cfg.KeyData, err = dataOrFile(us.ClientKeyData, us.ClientKey, dir); err != nil {
			return Config{}, fmt.Errorf("user %q: client key: %w", userName, err)
		}
		cfg.Token = us.Token
		if us.TokenFile != "" && us.Token == "" {
			// As in client-go, an inline token wins over the file.
			cfg.TokenFile = resolve(us.TokenFile, dir)
		}
		found = true
		break
	}
	if !found {
		return Config{}, fmt.Errorf("user %q is not in the file", userName)
	}
	return cfg, nil
}

// dataOrFile returns inline data, else the content of file (relative to
// dir), else nil.
func dataOrFile(data []byte, file, dir string) ([]byte, error) {
	if len(data) > 0 {
		return data, nil
	}
	if file == "" {
		return nil, nil
	}
	b, err := os.ReadFile(resolve(file, dir))
	if err != nil {
		return nil, err
	}
	return b, nil
}

func resolve(file, dir string) string {
	if filepath.IsAbs(file) {
		return file
	}
	return filepath.Join(dir, file)
}
