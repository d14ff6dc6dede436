#!/usr/bin/perl
# Echo server on the original Perl Danga::Socket (Debian's libdanga-socket-perl).
# Prints "PORT <n>" once listening on 127.0.0.1, then serves until killed.
use strict;
use warnings;
use Danga::Socket;
use IO::Socket::INET;
use Socket qw(IPPROTO_TCP TCP_NODELAY);

package EchoConn;
use base 'Danga::Socket';
use fields ();

sub new {
    my ($self, $sock) = @_;
    $self = fields::new($self) unless ref $self;
    $self->SUPER::new($sock);
    $self->watch_read(1);
    return $self;
}

sub event_read {
    my $self = shift;
    my $bref = $self->read(65536);
    return $self->close("eof") unless defined $bref;
    $self->write($bref);
}

sub event_hup { $_[0]->close("hup") }
sub event_err { $_[0]->close("err") }

package main;

my $port = 0;
for (my $i = 0; $i < @ARGV; $i++) { $port = $ARGV[$i + 1] if $ARGV[$i] eq '--port'; }
my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port,
                                   Listen => 4096, ReuseAddr => 1, Blocking => 0)
    or die "listen: $!";
$| = 1;
print "PORT ", $listen->sockport, "\n";
Danga::Socket->AddOtherFds(fileno($listen) => sub {
    while (my $c = $listen->accept) {
        $c->blocking(0);
        setsockopt($c, IPPROTO_TCP, TCP_NODELAY, 1);
        EchoConn->new($c);
    }
});
Danga::Socket->EventLoop;
