package kubeca

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/cairnmesh/cairn/internal/pki"
)

// Keys of the CA Secret, as in a kubernetes.io/tls Secret plus ca.crt.
const (
	SecretCert   = "tls.crt" // signing certificate, optionally followed by intermediates
	SecretKey    = "tls.key" // its private key
	SecretBundle = "ca.crt"  // more certificates: intermediates, and the roots to trust
)

// Defaults of the CA's Kubernetes objects.
const (
	DefaultNamespace     = "cairn-system"
	DefaultSecretName    = "cairn-ca"
	DefaultConfigMapName = "cairn-root-cert"
	ConfigMapKey         = "root-cert.pem"
)

// LoadSecret reads the CA from a Secret's data (see SecretCert, SecretKey,
// SecretBundle). The roots to trust are every self-signed certificate in
// it: during a rotation ca.crt lists the old root and the new one.
func LoadSecret(s *corev1.Secret) (*pki.CA, []*x509.Certificate, error) {
	caObj, roots, err := pki.LoadCA(s.Data[SecretCert], s.Data[SecretKey], s.Data[SecretBundle])
	if err != nil {
		return nil, nil, fmt.Errorf("CA secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return caObj, roots, nil
}

// EnsureRoot returns the CA kept in Secret namespace/name. When the Secret
// does not exist it creates a self-signed root for trust domain td and
// stores it there (first start); later starts, and other replicas, reuse it.
// A user's CA is used by creating the Secret before the first start.
func EnsureRoot(ctx context.Context, client kubernetes.Interface, namespace, name, td string, log *slog.Logger) (*pki.CA, []*x509.Certificate, error) {
	secrets := client.CoreV1().Secrets(namespace)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		return LoadSecret(s)
	}
	if !apierrors.IsNotFound(err) {
		return nil, nil, fmt.Errorf("reading CA secret %s/%s: %w", namespace, name, err)
	}
	root, err := pki.NewRoot(td, 0)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := pki.EncodeKeyPEM(root.Key)
	if err != nil {
		return nil, nil, err
	}
	certPEM := pki.EncodeCertPEM(root.Cert)
	s = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
			Labels: map[string]string{"app.kubernetes.io/managed-by": "istiod-lite"}},
		Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{SecretCert: certPEM, SecretKey: keyPEM, SecretBundle: certPEM},
	}
	created, err := secrets.Create(ctx, s, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err): // another replica was first
		existing, err := secrets.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, nil, fmt.Errorf("reading CA secret %s/%s: %w", namespace, name, err)
		}
		return LoadSecret(existing)
	case err != nil:
		return nil, nil, fmt.Errorf("creating CA secret %s/%s: %w", namespace, name, err)
	}
	if log != nil {
		log.Info("created self-signed root CA", "secret", namespace+"/"+name, "trust_domain", td, "not_after", root.Cert.NotAfter)
	}
	return LoadSecret(created)
}
