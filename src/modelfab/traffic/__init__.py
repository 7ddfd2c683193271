"""What flows through deployed models, shared by the server and the loop: which version answers
(routing), what it answered (the prediction log and its index), what truly happened (feedback), and the
loop's latest watch of each live version.

The server writes the log and reads routing and the watch; the loop reads the index and feedback and
writes routing and the watch. Neither imports the other.
"""
