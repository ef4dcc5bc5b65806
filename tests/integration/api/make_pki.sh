#!/usr/bin/env bash
# A throwaway PKI for the HTTPS API tests, made with the openssl CLI in DIR:
#   host-ca.pem           CA of the API's server certificate (what curl --cacert takes)
#   server.pem/.key       the API's certificate, for IP 127.0.0.1 and ::1
#   client-ca.pem         the CA whose client certificates the API accepts
#   alice, bob .pem/.key  client certificates (Ed25519) from client-ca
#   carol.pem/.key        a client certificate (ECDSA P-256) from client-ca
#   expired.pem/.key      from client-ca, valid only in 2020
#   mallory.pem/.key      from rogue-ca, which the API does not accept
set -euo pipefail
dir=${1:?usage: make_pki.sh DIR}
mkdir -p "$dir"
cd "$dir"

ca() {  # name subject
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$1.key" -out "$1.pem" \
    -days 30 -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}
ca host-ca "surrogated test host CA"
ca client-ca "surrogated test client CA"
ca rogue-ca "someone else's CA"

# The server certificate, with the addresses curl and surrogatectl connect to.
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr \
  -subj "/CN=surrogated API" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >server.ext
openssl x509 -req -in server.csr -CA host-ca.pem -CAkey host-ca.key -CAcreateserial -days 30 -extfile server.ext \
  -out server.pem 2>/dev/null

printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n' >client.ext
client() {  # name ca keyalg
  if [[ $3 == ed25519 ]]; then
    openssl genpkey -algorithm ed25519 -out "$1.key" 2>/dev/null
  else
    openssl genpkey -algorithm ec -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null
  fi
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 30 -extfile client.ext \
    -out "$1.pem" 2>/dev/null
}
client alice client-ca ed25519
client bob client-ca ed25519
client carol client-ca p256
client mallory rogue-ca ed25519

# An expired client certificate: `openssl ca` can date it in the past.
openssl genpkey -algorithm ed25519 -out expired.key 2>/dev/null
openssl req -new -key expired.key -out expired.csr -subj "/CN=expired" 2>/dev/null
mkdir -p ca-db && : >ca-db/index.txt && echo 01 >ca-db/serial
cat >ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = ca-db/index.txt
serial = ca-db/serial
new_certs_dir = ca-db
default_md = sha256
policy = any
copy_extensions = none
x509_extensions = ext
[any]
commonName = supplied
[ext]
extendedKeyUsage = clientAuth
basicConstraints = CA:FALSE
CNF
openssl ca -batch -config ca.cnf -cert client-ca.pem -keyfile client-ca.key -in expired.csr -out expired.pem \
  -startdate 20200101000000Z -enddate 20200201000000Z -notext 2>/dev/null
rm -f ./*.csr
